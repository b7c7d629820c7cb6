// Names for stoker's native threads, so that `top -H`, profilers and per-thread CPU accounting
// can tell the HTTP, preprocessing and dispatch threads apart.
#pragma once

#include <pthread.h>

namespace stoker {

// Linux keeps at most 15 characters; longer names are cut rather than refused.
inline void name_this_thread(const char* name) {
  char shortened[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) shortened[i] = name[i];
  pthread_setname_np(pthread_self(), shortened);
}

}  // namespace stoker
