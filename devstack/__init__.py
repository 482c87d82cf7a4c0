"""Developer tooling: code generation and the local process supervisor behind `make run` and the tests."""
