"""Building a cell: install plans per lane, their resolution, the CPU lane's vLLM identity, what is installed.

Never imports the plugin: the noxfile calls this before pytest exists in the cell.
"""
