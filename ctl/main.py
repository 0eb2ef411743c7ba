def main() -> None:
    import pyctr.daemon
    print(pyctr.daemon.__file__)
