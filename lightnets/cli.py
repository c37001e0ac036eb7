"""The ``lightnets`` console script."""

def main(argv=None):  # placeholder until the CLI lands
    return 0
