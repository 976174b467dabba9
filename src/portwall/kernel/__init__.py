"""Talking to a kernel: run commands inside a namespace (injectable, so appliers are
unit-tested with a fake runner) and the conntrack clean-up every backend shares."""
