"""pbrforge.runtime"""
