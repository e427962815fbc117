"""The package version, recorded in every manifest the builder writes."""

__version__ = "0.1.0"
