"""Code shared by the web app, the workflows and the activities; it imports none of them."""
