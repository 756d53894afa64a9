"""Placeholder replaced by the benchmark module."""


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError
