"""Tests of the applications in examples/, over real HTTP and in process."""
