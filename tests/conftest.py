"""Shared pytest set-up: each area keeps its fixtures in tests/fixtures_<area>.py."""

pytest_plugins: list[str] = [
    "tests.fixtures_redis",
    "tests.fixtures_server",
    "tests.fixtures_mongo",
    "tests.fixtures_workers",
    "tests.fixtures_browser",
    "tests.fixtures_cluster",
]
