# Included after every project() of a source build (CMAKE_PROJECT_INCLUDE, see //:WORKSPACE).
# llama-cpp-python loads libllama and ggml only, but its CMakeLists forces llama.cpp's `common`
# library on (the code behind llama.cpp's own tools, with an HTTP client): a third of the build.
# Turning it off here, inside llama.cpp's project() and after that force, builds what is loaded.
if(PROJECT_NAME STREQUAL "llama.cpp")
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp's tools library; llama_cpp never loads it" FORCE)
endif()
