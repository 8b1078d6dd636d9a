"""gateway: one self-hosted HTTP front door for every model a company serves."""

__version__ = "0.1.0"
