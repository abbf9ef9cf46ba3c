"""QuickSAM > Set up…: the QGIS side of the environments (`envs/` does the work).

`context.py` turns the running QGIS into set-up requests and activates the runtime on plugin load;
`task.py` runs a set-up as a QgsTask (progress, cancel, log); `dialog.py` is the Set-up dialog
(`setup_dialog.ui`).
"""
