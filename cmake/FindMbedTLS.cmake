# FindMbedTLS: Debian 12's mbedTLS 2.28 ships neither a pkg-config file nor a
# CMake package, so look for the headers and the three libraries directly.
#
# Defines MbedTLS_FOUND, MbedTLS_VERSION and the imported targets
# MbedTLS::mbedcrypto, MbedTLS::mbedx509, MbedTLS::mbedtls.

find_path(MbedTLS_INCLUDE_DIR NAMES mbedtls/ssl.h)
find_library(MbedTLS_CRYPTO_LIBRARY NAMES mbedcrypto)
find_library(MbedTLS_X509_LIBRARY NAMES mbedx509)
find_library(MbedTLS_TLS_LIBRARY NAMES mbedtls)

if(MbedTLS_INCLUDE_DIR)
	foreach(_hdr mbedtls/build_info.h mbedtls/version.h)
		if(EXISTS "${MbedTLS_INCLUDE_DIR}/${_hdr}")
			file(STRINGS "${MbedTLS_INCLUDE_DIR}/${_hdr}" _ver
				REGEX "^#define[ \t]+MBEDTLS_VERSION_STRING[ \t]+\"[0-9.]+\"")
			if(_ver)
				string(REGEX REPLACE ".*\"([0-9.]+)\".*" "\\1" MbedTLS_VERSION "${_ver}")
				break()
			endif()
		endif()
	endforeach()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(MbedTLS
	REQUIRED_VARS MbedTLS_INCLUDE_DIR MbedTLS_CRYPTO_LIBRARY MbedTLS_X509_LIBRARY MbedTLS_TLS_LIBRARY
	VERSION_VAR MbedTLS_VERSION)

if(MbedTLS_FOUND)
	if(NOT TARGET MbedTLS::mbedcrypto)
		add_library(MbedTLS::mbedcrypto UNKNOWN IMPORTED)
		set_target_properties(MbedTLS::mbedcrypto PROPERTIES
			IMPORTED_LOCATION "${MbedTLS_CRYPTO_LIBRARY}"
			INTERFACE_INCLUDE_DIRECTORIES "${MbedTLS_INCLUDE_DIR}")
	endif()
	if(NOT TARGET MbedTLS::mbedx509)
		add_library(MbedTLS::mbedx509 UNKNOWN IMPORTED)
		set_target_properties(MbedTLS::mbedx509 PROPERTIES
			IMPORTED_LOCATION "${MbedTLS_X509_LIBRARY}"
			INTERFACE_INCLUDE_DIRECTORIES "${MbedTLS_INCLUDE_DIR}"
			INTERFACE_LINK_LIBRARIES MbedTLS::mbedcrypto)
	endif()
	if(NOT TARGET MbedTLS::mbedtls)
		add_library(MbedTLS::mbedtls UNKNOWN IMPORTED)
		set_target_properties(MbedTLS::mbedtls PROPERTIES
			IMPORTED_LOCATION "${MbedTLS_TLS_LIBRARY}"
			INTERFACE_INCLUDE_DIRECTORIES "${MbedTLS_INCLUDE_DIR}"
			INTERFACE_LINK_LIBRARIES MbedTLS::mbedx509)
	endif()
endif()
mark_as_advanced(MbedTLS_INCLUDE_DIR MbedTLS_CRYPTO_LIBRARY MbedTLS_X509_LIBRARY MbedTLS_TLS_LIBRARY)
