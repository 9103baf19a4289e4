# Included after every project() of a source build (CMAKE_PROJECT_INCLUDE, see //:WORKSPACE).
if(PROJECT_NAME STREQUAL "llama.cpp")
  # llama-cpp-python loads libllama and ggml only, but its CMakeLists forces llama.cpp's `common`
  # library on (the code behind llama.cpp's own tools, with an HTTP client): a third of the build.
  # Turned off here, inside llama.cpp's project() and so after that force.
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp's tools library; llama_cpp never loads it" FORCE)
  # pip builds in a random temporary directory, and ggml's asserts embed __FILE__: without these
  # maps every build gives other library bytes, so no two machines share the cache entries of the
  # actions that load llama.cpp. With them, two builds give identical libraries.
  add_compile_options(
    "-ffile-prefix-map=${CMAKE_SOURCE_DIR}=llama-cpp-python"
    "-ffile-prefix-map=${CMAKE_BINARY_DIR}=build"
  )
endif()
