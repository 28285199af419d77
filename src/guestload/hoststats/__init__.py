"""Host stats: groups of libvirt's bulk domain stats, each registered from its own module."""
