"""State and actions the window composes: the plan controller and its actions, conversion actions,
metadata editing, recent files.  None imports the window: each names what it needs of its host."""
