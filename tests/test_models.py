"""Every way of naming a model gives the engine the same answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from _imagegen import jpeg_rgb
from _models import TinyNet

import stoker

SPEC = stoker.ImageSpec(size=40, crop=32)
IMAGE = jpeg_rgb(50, 60, 7)


def expected() -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = TinyNet()(stoker.preprocess_batch([IMAGE], SPEC))[0]
    return out


def answer(model: stoker._models.ModelLike) -> torch.Tensor:
    with stoker.Engine(model, SPEC, max_batch_size=2) as engine:
        result: torch.Tensor = engine.infer_sync(IMAGE)
    return result


# torch deprecates TorchScript; stoker still serves the files people already have.
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "net.ts"
    torch.jit.script(TinyNet()).save(str(path))  # type: ignore[no-untyped-call]
    torch.testing.assert_close(answer(path), expected())


def test_exported_program_and_its_file(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        TinyNet(), (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},)
    )
    torch.testing.assert_close(answer(program), expected())
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    torch.testing.assert_close(answer(str(path)), expected())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_file_that_is_no_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        stoker.Engine(str(path), SPEC)


def test_missing_file_and_wrong_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        stoker.Engine(str(tmp_path / "missing" / "net.pt"), SPEC)
    with pytest.raises(TypeError, match="model must be"):
        stoker.Engine(42, SPEC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        stoker.Engine(TinyNet(), SPEC, weights="w.pth")


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_architecture_names_need_torchvision() -> None:
    with pytest.raises(ValueError, match="torchvision"):
        stoker.Engine("resnet50", SPEC)


def test_embedded_models_by_name_with_and_without_weights(tmp_path: Path) -> None:
    from stoker._nets import TinyCNN

    torch.manual_seed(3)
    trained = TinyCNN()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    spec = stoker.ImageSpec(size=256, crop=224)
    with stoker.Engine("tiny", spec, max_batch_size=2) as engine:
        random_weights = engine.infer_sync(IMAGE)
    with stoker.Engine("tiny", spec, weights=str(path), max_batch_size=2) as engine:
        loaded = engine.infer_sync(IMAGE)
    with torch.inference_mode():
        want = trained.eval()(stoker.preprocess_batch([IMAGE], spec))[0]
    assert random_weights.shape == loaded.shape == (1000,)
    torch.testing.assert_close(loaded, want)
    assert not torch.allclose(random_weights, want)
