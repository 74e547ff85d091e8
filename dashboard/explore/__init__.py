"""The Explore page's parts (dashboard/pages/explore.py composes them): the map (`map_view`), where its points
lie (`projection`) and what is selected on it (`selection`)."""
