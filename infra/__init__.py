"""The Pulumi program for txmetrics: one component per Azure concern, wired in program.py."""
