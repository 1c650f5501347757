"""Secure virtual research environment for cancer-imaging research."""
