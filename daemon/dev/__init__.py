"""Tools for trying and testing the daemon: the tansu launcher, the dev stack, tail."""
