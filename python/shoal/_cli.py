"""The ``shoal`` console command: runs the C binary with the same arguments."""

import os
import sys


def main(argv=None):
    """Replaces this process with the ``shoal`` binary.

    Sets ``SHOAL_PYTHON`` to this interpreter (unless already set) so that the
    daemon's workers run the Python that has shoal installed.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    Returns:
        Does not return on success; 127 when the binary is missing.
    """
    from ._cluster import binary_path
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        binary = binary_path()
    except FileNotFoundError as e:
        print(f"shoal: {e}", file=sys.stderr)
        return 127
    os.environ.setdefault("SHOAL_PYTHON", sys.executable)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, ["shoal", *args])


if __name__ == "__main__":
    sys.exit(main())
