"""Tests of the monitoring bundle: rules, promtool tests, runbooks, dashboard, generator."""
