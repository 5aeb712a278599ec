"""The Supervisor layer: the event listener and the supervisord.conf renderer.

The only package that imports the Supervisor library (it ships no types).
"""
