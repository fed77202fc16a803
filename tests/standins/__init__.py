"""Stand-ins built by the test harness for things the lab cannot reach (never for a real fleet)."""
