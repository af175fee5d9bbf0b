"""Offline reporting: the results schema, the release gate, its Markdown/HTML page, the host doctor.

Never imports pytest or the plugin: the gate runs on results collected anywhere.
"""
