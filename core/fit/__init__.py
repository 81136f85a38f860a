from .photo_fit import FitConfig, PhotoFit, PhotoFitter

__all__ = ["FitConfig", "PhotoFit", "PhotoFitter"]
