"""The storscp benchmark (issue 6): storscp against DCMTK, Orthanc and pynetdicom.

Run it with `make bench` (quick) or `make bench-full`; see bench/README.md.
Everything it generates lives in a work directory outside git (bench/out/),
its report too, except that `make bench-full` updates bench/RESULTS.md.
"""
