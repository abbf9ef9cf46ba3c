"""QuickSAM's page in Settings > Options (`page.py`, laid out in `options_page.ui`): the settings of
`ui/settings.py` a user sets once, and a Check of the encoder's Python that reuses the set-up's."""
