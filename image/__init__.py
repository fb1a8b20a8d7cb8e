"""The SD-card image: a Debian root built with mmdebstrap, the appliance venv, and QEMU boot helpers.

``image.recipe`` is pure (the files the image gets, the partition layout, the package lists);
``image.build`` runs the tools; ``image.qemu`` boots the amd64 variant for tests.
"""
