"""guestload's monitoring bundle: rule file, PrometheusRule, dashboard and their generator."""
