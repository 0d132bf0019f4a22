"""
Protocol codecs: small pure modules that turn bytes into values and back.
"""
