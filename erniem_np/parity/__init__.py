"""Parity toolkit: golden bundles of every probe a port needs, and a comparator naming the first diverging one."""
