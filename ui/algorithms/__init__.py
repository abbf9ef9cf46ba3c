"""The Processing provider and algorithms (QGIS layer over encoder/ and interactive/)."""
