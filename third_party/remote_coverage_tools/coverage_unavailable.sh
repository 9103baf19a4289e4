#!/bin/sh
echo "bazel coverage is unavailable: remote_coverage_tools is an offline stand-in (see WORKSPACE)." >&2
exit 2
