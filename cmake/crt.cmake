# Locate (and, the first time, build) the AWS CRT C libraries from the pinned awscrt sdist.
#
# cmake/crt_cache.py downloads the sdist with pip in hash-checking mode, builds its crt/
# libraries as static -fPIC archives and installs them into a cache outside the build tree
# ($S3TORCH_CRT_CACHE, else ~/.cache/s3torch), so rebuilding the extension never rebuilds
# the CRT. S3TORCH_CRT_PREFIX points at an existing install instead.

# The pinned awscrt release (AWSCRT_VERSION in crt_cache.py), for crt_compat.cpp's build-time check.
file(STRINGS "${CMAKE_CURRENT_LIST_DIR}/crt_cache.py" _awscrt_pin REGEX "^AWSCRT_VERSION = ")
string(REGEX REPLACE "^AWSCRT_VERSION = \"([^\"]+)\".*" "\\1" S3TORCH_AWSCRT_VERSION "${_awscrt_pin}")
if(NOT S3TORCH_AWSCRT_VERSION)
  message(FATAL_ERROR "s3torch: cannot read AWSCRT_VERSION from cmake/crt_cache.py")
endif()

if(NOT S3TORCH_CRT_PREFIX AND DEFINED ENV{S3TORCH_CRT_PREFIX})
  set(S3TORCH_CRT_PREFIX "$ENV{S3TORCH_CRT_PREFIX}")
endif()

if(NOT S3TORCH_CRT_PREFIX)
  find_package(Python COMPONENTS Interpreter REQUIRED)
  message(STATUS "s3torch: locating the AWS CRT libraries (first build compiles them: ~2-3 minutes)")
  # A cross build (scripts/build_wheel.sh --arch) builds the CRT with the same toolchain file.
  set(_crt_toolchain "")
  if(CMAKE_TOOLCHAIN_FILE)
    set(_crt_toolchain --toolchain-file "${CMAKE_TOOLCHAIN_FILE}")
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/crt_cache.py"
            --c-compiler "${CMAKE_C_COMPILER}" --build-type Release ${_crt_toolchain}
    OUTPUT_VARIABLE _crt_out
    RESULT_VARIABLE _crt_rc
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _crt_rc EQUAL 0)
    message(FATAL_ERROR "s3torch: building the AWS CRT libraries failed (see the output above)")
  endif()
  string(REGEX REPLACE ".*\n" "" S3TORCH_CRT_PREFIX "${_crt_out}")
endif()
message(STATUS "s3torch: AWS CRT libraries from ${S3TORCH_CRT_PREFIX}")

# A build directory configured with another prefix (a new recipe or pin in crt_cache.py) has
# each package's location cached under the old one: forget those, or the old libraries link.
get_filename_component(_crt_root "${S3TORCH_CRT_PREFIX}/../.." ABSOLUTE)
get_cmake_property(_cached CACHE_VARIABLES)
foreach(_var IN LISTS _cached)
  if(_var MATCHES "_DIR$")
    string(FIND "${${_var}}" "${_crt_root}/" _in_cache)
    string(FIND "${${_var}}" "${S3TORCH_CRT_PREFIX}/" _in_prefix)
    if(_in_cache EQUAL 0 AND NOT _in_prefix EQUAL 0)
      unset(${_var} CACHE)
    endif()
  endif()
endforeach()

list(PREPEND CMAKE_PREFIX_PATH "${S3TORCH_CRT_PREFIX}")
list(PREPEND CMAKE_MODULE_PATH "${S3TORCH_CRT_PREFIX}/lib/cmake")
set(CMAKE_FIND_PACKAGE_PREFER_CONFIG ON)
find_package(aws-c-s3 REQUIRED CONFIG)
