#!/usr/bin/env bash
# Build the release binary of concierge with the project's release flags, and print its path.
#
#   scripts/build-release.sh                 # prints e.g. /repo/.build/release/concierge
#   scripts/build-release.sh --scratch-path .build-release
#
# Extra arguments go to `swift build`. The build's own output goes to stderr, so
#   CONCIERGE_BIN=$(scripts/build-release.sh)
# works. bench/run.sh and scripts/demo.sh build through here, so that what is benchmarked is what
# is run.
#
# The flags, and why:
#   -enforce-exclusivity=unchecked   Swift checks at run time that no two accesses to one variable
#       overlap (a class property, a global), in every module, SwiftNIO's included. On this
#       proxy's paths the checks are 9-15% of its user CPU (measured, see README "Performance").
#       Debug builds, and so every test (scripts/test.sh builds debug), keep the checks: an
#       overlapping access there traps, and the release build is the same code.
#       -Xswiftc applies the flag to the dependencies too; a Package.swift setting would reach
#       only our own targets.
#   --static-swift-stdlib   The Swift runtime, Foundation and Dispatch linked into the binary:
#       it runs on a machine without the Swift toolchain's libraries (only glibc and libstdc++),
#       calls into the runtime (swift_retain, swift_release: about a fifth of the proxy's
#       instructions per transaction) are direct rather than through the PLT, and valgrind
#       (callgrind, to count instructions per transaction; bench/README.md) can run it: it
#       stopped at the DWARF 5 of the toolchain's shared libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGS=(-c release -Xswiftc -enforce-exclusivity=unchecked --static-swift-stdlib)
swift build "${FLAGS[@]}" "$@" --product concierge >&2
echo "$(swift build "${FLAGS[@]}" "$@" --show-bin-path)/concierge"
