# Optional CUDA module. DTPM_CUDA=AUTO builds it when a CUDA compiler is found, ON requires one,
# OFF skips it. Nothing is downloaded at configure time.
set(DTPM_CUDA "AUTO" CACHE STRING "Build the CUDA module _cuda: AUTO, ON or OFF")
set_property(CACHE DTPM_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${DTPM_CUDA}" _dtpm_cuda_mode)
if(NOT _dtpm_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "DTPM_CUDA must be AUTO, ON or OFF, got '${DTPM_CUDA}'")
endif()

set(DTPM_BUILD_CUDA OFF)
if(NOT _dtpm_cuda_mode STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DTPM_BUILD_CUDA ON)
  elseif(_dtpm_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR
      "DTPM_CUDA=ON but no CUDA compiler was found. Install the CUDA toolkit (nvcc on PATH or "
      "CUDACXX set), or build with -DDTPM_CUDA=AUTO or OFF.")
  else()
    message(STATUS "dtpm_fast: no CUDA compiler found, building without the _cuda module")
  endif()
endif()

if(DTPM_BUILD_CUDA)
  # Real code for Ampere (sm_80) and Hopper (sm_90) plus PTX for newer GPUs, unless the user chose
  # (-DCMAKE_CUDA_ARCHITECTURES=..., or the CUDAARCHS environment variable that enable_language reads).
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 90-virtual)
  endif()
  enable_language(CUDA)
  add_subdirectory(csrc/cuda)
  message(STATUS "dtpm_fast: building the _cuda module for ${CMAKE_CUDA_ARCHITECTURES}")
endif()
