"""The dashboard's pages (Bokeh layouts that update themselves from a follower)."""
