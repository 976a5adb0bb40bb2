"""The benchmark of bullphish-billing (`make bench`): see bench/README.md."""
