# A package, so that these modules import as tests.* (a build-side tests/conftest.py may share the session).
