"""stoker's native data plane"""

from collections.abc import Callable, Sequence
from typing import Annotated, Final, overload

import numpy
from numpy.typing import NDArray

class Preprocessor:
    """A compiled ImageSpec: decode, resize, crop and normalize settings."""

    def __init__(
        self,
        resize_mode: str,
        resize_h: int,
        resize_w: int,
        crop: bool,
        crop_h: int,
        crop_w: int,
        interpolation: str,
        antialias: bool,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
        layout: str,
        dtype: str,
        reduce_gap: float,
        max_pixels: int,
    ) -> None: ...
    @property
    def item_bytes(self) -> int: ...
    def batch_shape(self, n: int) -> list[int]: ...

def run_batch(
    pre: Preprocessor, items: object, out: object | None, pinned: bool, numpy: bool = False
) -> tuple[object, list[tuple[int, str, str]]]:
    """
    Preprocess a batch; returns (output or None when `out` was given, [(index, kind, message)]).
    """

def submit_batch(
    pre: Preprocessor, items: object, out: object | None, pinned: bool, callback: Callable
) -> None:
    """
    Start a batch; callback(output or None, errors) runs on a worker thread when it is done.
    """

def decode(data: bytes, max_pixels: int) -> NDArray[numpy.uint8]:
    """Decode one image to (H, W, 3) uint8 RGB with EXIF orientation applied."""

def image_info(data: bytes, max_pixels: int) -> tuple[str, int, int, int]:
    """(format, width, height, orientation) of one image from its header."""

def supported_formats() -> list[str]:
    """Formats this build decodes."""

def set_num_threads(n: int) -> None:
    """Resize the native worker pool (waits for running batches)."""

def get_num_threads() -> int:
    """Size of the native worker pool."""

def set_thread_niceness(niceness: int) -> None:
    """
    Run the native worker pool `niceness` nice levels (0..19) below the calling thread, so
    that Python threads feeding a GPU win a core from batch work (waits for running batches).
    """

def get_thread_niceness() -> int:
    """
    How many nice levels the native worker pool runs below the thread that made it.
    """

def wait_idle() -> None:
    """Block until no batch is running."""

def enable_pinning(library: str) -> None:
    """Load the CUDA runtime at `library` to page-lock output buffers."""

def pinning_enabled() -> bool:
    """Whether output buffers can be page-locked."""

def arena_stats() -> dict:
    """Counters of the pooled output arena."""

def arena_trim() -> None:
    """Free every cached output buffer."""

class PreparedBatch:
    """A preprocessed batch in a staging slot."""

    @property
    def sequence(self) -> int: ...
    @property
    def slot(self) -> int:
        """Index of the staging slot holding the batch."""

    @property
    def size(self) -> int: ...
    @property
    def ids(self) -> NDArray[numpy.uint64]: ...
    @property
    def enqueued_ns(self) -> NDArray[numpy.int64]: ...
    @property
    def deferred(self) -> list[int]:
        """Rows left for the GPU decoder."""

    @property
    def errors(self) -> list[tuple[int, str, str]]:
        """[(row, kind, message)] for rows that failed to preprocess."""

    @property
    def formed_ns(self) -> int: ...
    @property
    def prep_start_ns(self) -> int: ...
    @property
    def prep_end_ns(self) -> int: ...

class Feeder:
    """
    Native batcher feeding a ring of staging buffers with preprocessed batches.
    """

    def __init__(
        self,
        pre: Preprocessor,
        max_batch_size: int,
        max_delay_us: int,
        preferred_sizes: Sequence[int],
        capacity: int,
        slots: int,
        pinned: bool,
    ) -> None: ...
    def submit(self, id: int, data: object, high: bool, deadline_ns: int) -> int:
        """
        Queue a request (bytes or a contiguous memoryview); the caller keeps `data` alive and
        unchanged until it is answered.
        Returns 0 accepted, 1 queue full, 2 closed, 3 duplicate id.
        """

    def cancel(self, id: int) -> bool:
        """Remove a waiting request; False when it already left the queue."""

    def next(self) -> PreparedBatch:
        """Wait for the next prepared batch; None once closed and drained."""

    def next_expired(self) -> NDArray[numpy.uint64] | None:
        """Wait for ids of requests that expired in the queue; None once closed."""

    def release(self, slot: int) -> None:
        """Return a staging slot to the ring."""

    def close(self) -> None:
        """Stop admissions; queued requests are still handed out."""

    def set_gpu_share(self, share: float) -> None: ...
    @property
    def gpu_share(self) -> float: ...
    @property
    def waiting(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def pinned(self) -> bool: ...
    @property
    def max_batch_size(self) -> int: ...
    def slot(self, i: int) -> NDArray[numpy.uint8]:
        """Flat uint8 view of a staging slot (valid while the feeder lives)."""

class Histogram:
    """Log-linear latency histogram (8 buckets per power of two), lock-free."""

    def __init__(self) -> None: ...
    def record(self, value: int) -> None: ...
    def record_many(
        self,
        values: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", writable=False)],
    ) -> None:
        """Record every value of an int64 array (negatives count as 0)."""

    def reset(self) -> None: ...
    def snapshot(self) -> tuple[NDArray[numpy.uint64], int, int, int]:
        """(bucket counts, count, sum, max)."""

    @staticmethod
    def upper_bounds() -> NDArray[numpy.uint64]:
        """The largest value each bucket holds."""

def jpeg_gpu_friendly(data: bytes) -> bool:
    """Whether a GPU JPEG decoder gives this image the CPU path's pixels."""

class LoadGenerator:
    """Native HTTP/1.1 load generator over keep-alive connections (epoll)."""

    def __init__(
        self,
        *,
        requests: Sequence[bytes],
        host: str = "127.0.0.1",
        port: int,
        connections: int = 64,
        threads: int = 1,
        rate: float = 0.0,
        warmup_s: float = 1.0,
        duration_s: float = 10.0,
        max_requests: int = 0,
        timeout_s: float = 30.0,
        seed: int = 1,
    ) -> None:
        """
        requests: complete HTTP/1.1 requests as bytes; connection i starts at request i % n
        and walks them round-robin. rate: Poisson arrivals per second (open loop; latency
        from the scheduled time), or 0 for a closed loop. Raises ValueError on a bad setting.
        """

    def start(self) -> None:
        """Launch the I/O threads; the warm-up starts now."""

    @property
    def completed(self) -> int:
        """Measured completions so far."""

    @property
    def done(self) -> bool:
        """Whether wait() would return at once."""

    def stop(self) -> None:
        """End the run early; idempotent."""

    def wait(self) -> dict:
        """
        Wait for the run to end and return its report: a dict of elapsed_s, sent, completed,
        timeouts, transport_errors, late, unsent, cpu_s, statuses {status: count}, latency
        and server_timing {name: histogram}, histograms (µs) as Histogram.snapshot() tuples.
        """

class Gateway:
    """Native HTTP server feeding models' feeders directly."""

    def __init__(
        self,
        host: str,
        port: int,
        io_threads: int,
        token: str,
        max_body_bytes: int,
        max_images_per_request: int,
        timeout_us: int,
        models: Sequence[tuple[str, Sequence[Feeder], Sequence[str]]],
    ) -> None:
        """
        Bind host:port (0: any free port). `models` holds (name, feeders, output names):
        one feeder per engine of the model; each request goes to the one with the fewest
        requests waiting.
        """

    @property
    def port(self) -> int: ...
    @property
    def forwarded(self) -> int:
        """Requests handed to Python so far."""

    @property
    def pending(self) -> int:
        """Requests whose images are still queued or in a batch."""

    id_bit: Final[int] = ...
    """(arg: object, /) -> int"""

    def start(self) -> None:
        """Start serving."""

    def shutdown(self, drain_s: float) -> None:
        """
        Stop accepting, let requests in flight finish for up to drain_s, close.
        """

    def next_forwarded(self) -> tuple[list, list[int]] | None:
        """
        Wait for requests left to Python and forwarded requests whose clients left:
        ([(token, method, path, query, headers, body)], [abandoned token]), all but the
        tokens as bytes; None once shut down.
        """

    def respond(
        self, token: int, status: int, headers: Sequence[tuple[str, str]], body: bytes
    ) -> None:
        """Answer a forwarded request."""

    def respond_start(
        self, token: int, status: int, headers: Sequence[tuple[str, str]], body: bytes
    ) -> None:
        """
        Start a forwarded request's answer whose body follows in pieces (body: the first).
        """

    def respond_pieces(self, pieces: list) -> None:
        """
        Pieces of started answers, [(token, bytes, last)] in order per token; `last` ends
        that answer. One hand-over per I/O thread.
        """

    def payload(self, id: int) -> bytes:
        """A queued element's image bytes (empty when unknown)."""

    def answer(
        self,
        ids: Annotated[
            NDArray[numpy.uint64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        outputs: Sequence[
            tuple[str, str, Annotated[NDArray, dict(order="C", device="cpu", writable=False)]]
        ],
        queue_us: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        total_us: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        shared: Sequence[float],
        errors: Sequence[tuple[int, int, str]],
    ) -> None:
        """
        Answer elements: outputs are (name, datatype, array with one row per id); queue_us
        and total_us per id, shared the batch's (batch, preprocess, h2d, compute,
        postprocess) µs; errors (row, status, message).
        """

    def fail(
        self,
        ids: Annotated[
            NDArray[numpy.uint64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        status: int,
        message: str,
    ) -> None:
        """Fail elements."""

    def counts(self, model: int) -> list[tuple[int, int]]:
        """[(status, answered requests)] of the model at that index."""

    def routed(self, model: int, feeder: int) -> int:
        """Images given to that feeder of that model."""

class KVBlockManager:
    """
    Paged KV-cache blocks for generation: block tables per sequence, copy-on-write forks and
    a prefix cache of full blocks (evicted least recently freed first). Not thread-safe.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None: ...
    def can_allocate(self, n_tokens: int) -> bool:
        """Whether allocate() of any prompt of n_tokens tokens would succeed now."""

    def allocate(self, seq: int, tokens: Sequence[int]) -> int | None:
        """
        Blocks for a new sequence's prompt, reusing cached leading full blocks. Returns how
        many prompt tokens are already cached, or None when out of blocks (nothing changed).
        """

    def can_append(self, seq: int) -> bool: ...
    def append_needs_block(self, seq: int) -> bool:
        """
        Whether append_slot() takes a block from the pool (a new one or a private copy).
        """

    def append_slot(
        self, seq: int, token: int, tentative: bool = False
    ) -> tuple[bool, tuple[int, int] | None]:
        """
        Room for one decoded token: (appended, copy). appended is False when out of blocks
        (nothing changed); copy is (src, dst) when a shared last block was copied on write.
        A tentative token (a speculative draft) fills no cache entry until settle().
        """

    def settle(self, seq: int, n: int) -> None:
        """
        Keeps the first n tokens (every settled one at least), releases the blocks past
        them and caches the full blocks they complete.
        """

    def confirm(self, seq: int, token: int) -> None:
        """
        The first tentative token becomes `token` and is kept; any after it are dropped.
        """

    def fork(self, parent: int, child: int) -> None:
        """A new sequence sharing all of the parent's blocks."""

    def free(self, seq: int) -> None: ...
    def block_table(self, seq: int) -> NDArray[numpy.int32]:
        """The sequence's block ids (int32), in token order."""

    def num_tokens(self, seq: int) -> int: ...
    def __contains__(self, seq: int) -> bool: ...
    @overload
    def slot_mapping(
        self,
        seq: int,
        positions: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", writable=False)],
    ) -> NDArray[numpy.int64]:
        """Flat KV slots (block * block_size + offset, int64) of token positions."""

    @overload
    def slot_mapping(self, seq: int, positions: Sequence[int]) -> NDArray[numpy.int64]: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def num_free_blocks(self) -> int:
        """Blocks nobody holds, cached ones included."""

    @property
    def num_cached_blocks(self) -> int:
        """Blocks the prefix cache can find, held or not."""

    @property
    def prefix_hits(self) -> int: ...
    @property
    def prefix_misses(self) -> int: ...

class SchedulerStep:
    """One step's batch, as flat arrays for the model runner."""

    @property
    def input_ids(self) -> NDArray[numpy.int32]: ...
    @property
    def positions(self) -> NDArray[numpy.int64]: ...
    @property
    def seq_ids(self) -> NDArray[numpy.int64]:
        """
        One row per scheduled sequence, in the order of its query tokens in input_ids.
        """

    @property
    def query_lens(self) -> NDArray[numpy.int32]: ...
    @property
    def context_lens(self) -> NDArray[numpy.int32]: ...
    @property
    def draft_lens(self) -> NDArray[numpy.int32]:
        """Speculative draft tokens at the end of each row's query tokens."""

    @property
    def block_tables(self) -> NDArray[numpy.int32]:
        """(rows, width) int32, padded with -1; (0, 1) for an empty step."""

    @property
    def slot_mapping(self) -> NDArray[numpy.int64]: ...
    @property
    def copies(self) -> NDArray[numpy.int32]:
        """
        (n, 2) int32 copy-on-write (src, dst) block copies to do before the step.
        """

    @property
    def sample(self) -> NDArray[numpy.int64]:
        """The sequences update() expects a sampled token for, in this order."""

    @property
    def preempted(self) -> NDArray[numpy.int64]: ...
    @property
    def pending(self) -> NDArray[numpy.int32]:
        """
        Per row (int32): -1, or the row of the owed step's sample whose token is this row's
        input (scheduled ahead; the input id is 0 until the runner puts the token there).
        """

class Scheduler:
    """
    Continuous batching over paged KV blocks: decode rows first, then chunked prefills, with
    preemption by recompute. The policies are documented in csrc/core/scheduler.hpp.
    """

    def __init__(
        self, num_blocks: int, block_size: int, max_num_batched_tokens: int, max_num_seqs: int
    ) -> None: ...
    def add(
        self,
        seq: int,
        prompt: Sequence[int],
        max_new_tokens: int,
        eos_token_id: int | None = None,
        stop_token_ids: Sequence[int] = [],
    ) -> None:
        """Queues a sequence at the back of waiting."""

    def propose(self, seq: int, draft: Sequence[int]) -> None:
        """Speculative draft tokens for a decoding sequence's next step."""

    def schedule(self) -> SchedulerStep: ...
    def update(
        self, sampled: Sequence[int], counts: Sequence[int] | None = None
    ) -> list[tuple[int, list[int], str]]:
        """
        The tokens of the last step's sample, one per sequence or `counts[i]` for the i-th
        (its accepted drafts, then the model's own); returns the finished sequences as
        (seq, generated tokens, reason), reason being 'eos', 'stop' or 'length'.
        """

    def abort(self, seq: int) -> None: ...
    @property
    def num_waiting(self) -> int: ...
    @property
    def num_running(self) -> int: ...
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def prefix_hits(self) -> int: ...
    @property
    def prefix_misses(self) -> int: ...

def ngram_propose(
    histories: object, max_ngram: int, min_ngram: int, num_tokens: int
) -> list[list[int]]:
    """
    Prompt-lookup drafts for each history (native-endian int32 tokens, bytes-like): what
    followed the latest earlier occurrence of its last n tokens, n from max_ngram down.
    """

class NvJpegDecoder:
    """
    nvJPEG for the CUDA device current when it is made;
    every call must run with that device current.
    """

    def __init__(
        self, backend: str = "auto", libraries: Sequence[str] = [], max_pixels: int = 0
    ) -> None:
        """
        Loads the first of `libraries` that opens (default names when empty).
        'auto' takes the GPU's JPEG engines where it has them.
        """

    @property
    def hardware(self) -> bool:
        """Whether the GPU's hardware JPEG engines decode."""

    @property
    def library(self) -> str:
        """The nvJPEG library loaded."""

    def inspect(self, items: object) -> list[tuple[int, int, bool, str]]:
        """
        (width, height, batched, error) per item; batched: the batched decoder takes it.
        """

    def decode(
        self, items: object, out: int, capacity: int, stream: int
    ) -> list[tuple[int, int, int, str]]:
        """
        Decodes to planar RGB, one image after another in the device memory at
        `out` (`capacity` bytes), on the CUDA stream `stream`:
        (width, height, offset, error) per item; a bad item fails alone.
        """
