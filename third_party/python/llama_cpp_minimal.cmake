# Included after every project() of a source build (CMAKE_PROJECT_INCLUDE, see //:WORKSPACE).
if(PROJECT_NAME STREQUAL "llama.cpp")
  # llama-cpp-python loads libllama and ggml only, but its CMakeLists forces llama.cpp's `common`
  # library on (the code behind llama.cpp's own tools, with an HTTP client): a third of the build.
  # Turned off here, inside llama.cpp's project() and so after that force.
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp's tools library; llama_cpp never loads it" FORCE)
  # On a Mac, llama-cpp-python's CMakeLists forces Metal on (a -DGGML_METAL=OFF in CMAKE_ARGS loses
  # to that FORCE), and ggml turns BLAS and the Accelerate framework on by default. All three off,
  # here, after that force: every machine then builds ggml's CPU backend only, the build the GGUF
  # parity bounds were measured with on Linux, and no GPU kernels with their own float arithmetic.
  # On Linux the three are off already (Metal and BLAS by default, Accelerate is Apple-only).
  set(GGML_METAL OFF CACHE BOOL "CPU backend only, as on Linux" FORCE)
  set(GGML_BLAS OFF CACHE BOOL "CPU backend only, as on Linux" FORCE)
  set(GGML_ACCELERATE OFF CACHE BOOL "CPU backend only, as on Linux" FORCE)
  # pip builds in a random temporary directory, and ggml's asserts embed __FILE__: without these
  # maps every build gives other library bytes, so no two machines share the cache entries of the
  # actions that load llama.cpp. With them, two builds give identical libraries.
  add_compile_options(
    "-ffile-prefix-map=${CMAKE_SOURCE_DIR}=llama-cpp-python"
    "-ffile-prefix-map=${CMAKE_BINARY_DIR}=build"
  )
endif()
