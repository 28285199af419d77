"""A laboratory of real parts for guestload's end-to-end tests and demo.

A private libvirt daemon, a tiny guest image, VMs under TCG, and a real Prometheus and
Alertmanager, each started and torn down by process id.
"""
