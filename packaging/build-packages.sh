#!/usr/bin/env bash
# Builds the .deb and the .rpm from one install tree (CPack; settings in
# packaging/CMakeLists.txt):
#
#   bash packaging/build-packages.sh [OUT_DIR [VERSION]]
#
# OUT_DIR (default build-pkg/packages) receives
#   nuvlabox-event-agent_<version>_<arch>.deb
#   nuvlabox-event-agent-<version>-1.<arch>.rpm
# VERSION (X.Y.Z) builds the programs and packages as another version than
# project()'s in CMakeLists.txt (NBE_VERSION_OVERRIDE; upgrade tests).
# Needs: cmake, ninja, a C compiler, the -dev packages of .ci/install-deps,
# dpkg-dev (dpkg-shlibdeps) and rpm (rpmbuild).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build-pkg/packages}
version=${2:-}
build=${NBE_PKG_BUILD_DIR:-$src/build-pkg/build${version:+-$version}}

mkdir -p "$out"
out=$(cd "$out" && pwd)

cmake -S "$src" -B "$build" -G Ninja \
	-DCMAKE_INSTALL_PREFIX=/usr \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DCMAKE_EXE_LINKER_FLAGS="-Wl,-z,relro -Wl,-z,now" \
	-DNBE_BUILD_TESTS=OFF \
	-DNBE_VERSION_OVERRIDE="$version" >/dev/null
cmake --build "$build"
rm -rf "$build/packages"
(cd "$build" && cpack -G "DEB;RPM" >"$build/cpack.log" 2>&1) || {
	cat "$build/cpack.log" >&2
	exit 1
}
for f in "$build"/packages/*.deb "$build"/packages/*.rpm; do
	cp "$f" "$out/"
	echo "$out/${f##*/}"
done
