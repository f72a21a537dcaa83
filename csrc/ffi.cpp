// gcl_last_error(): the message behind the last -1 an entry point returned on this thread.
#include "ffi.h"

std::string& gcl::last_error() {
  thread_local std::string message;
  return message;
}

extern "C" const char* gcl_last_error() { return gcl::last_error().c_str(); }
