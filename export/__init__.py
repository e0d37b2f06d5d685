"""pbrforge.export"""
