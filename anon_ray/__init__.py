"""anon_ray: anonymize faces and licence plates in photo and video archives."""

__version__ = "0.1.0"
