"""`python -m imagekv <command>`: run through the warm worker (imagekv.worker), or in this process
when IMAGEKV_WORKER=off. Imports only the standard library: the command's own imports happen in
the worker's child or, without a worker, in imagekv.cli."""

from imagekv.worker import main

main("imagekv.cli:main")
