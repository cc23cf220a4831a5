# The embedded build: musl-gcc, every program linked fully static against the
# libraries .ci/build-static-musl installed into one prefix (README,
# "Embedded build"). Nothing from the host's glibc libraries or headers is
# searched.
#
#   prefix=$(bash .ci/build-static-musl "$PWD/build-static-prefix")
#   cmake -S . -B build-static -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/musl-static.cmake \
#         -DNBE_STATIC_PREFIX="$prefix" -DCMAKE_BUILD_TYPE=MinSizeRel -DNBE_WERROR=ON
#
# The unit tests (cmocka), the fuzz harnesses and the fault shims are not
# built: they run on the glibc builds; the integration tests run on this one.

if(NOT NBE_STATIC_PREFIX AND DEFINED ENV{NBE_STATIC_PREFIX})
	set(NBE_STATIC_PREFIX "$ENV{NBE_STATIC_PREFIX}")
endif()
if(NOT NBE_STATIC_PREFIX OR NOT EXISTS "${NBE_STATIC_PREFIX}/lib/libcurl.a")
	message(FATAL_ERROR "musl-static.cmake: -DNBE_STATIC_PREFIX=<the prefix .ci/build-static-musl "
		"printed> (no lib/libcurl.a in '${NBE_STATIC_PREFIX}')")
endif()
# the checks CMake compiles (try_compile) use this file too, and need the prefix
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES NBE_STATIC_PREFIX)
set(NBE_STATIC_PREFIX "${NBE_STATIC_PREFIX}" CACHE PATH
	"The static musl prefix (.ci/build-static-musl)")

find_program(NBE_MUSL_GCC musl-gcc REQUIRED)
set(CMAKE_C_COMPILER "${NBE_MUSL_GCC}")

# libraries, headers and packages from the prefix only; programs from the host
set(CMAKE_FIND_ROOT_PATH "${NBE_STATIC_PREFIX}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_FIND_LIBRARY_SUFFIXES .a)
set(ENV{PKG_CONFIG_LIBDIR} "${NBE_STATIC_PREFIX}/lib/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
# the Linux UAPI headers (linux/, asm/) the prefix holds, for every target
set(CMAKE_C_STANDARD_INCLUDE_DIRECTORIES "${NBE_STATIC_PREFIX}/include")
# one section per function and data object, and the link keeps only what is
# used: the code of a static program is resident, not shared (README)
set(CMAKE_C_FLAGS_INIT "-ffunction-sections -fdata-sections")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -Wl,--gc-sections")
set(NBE_STATIC ON)
