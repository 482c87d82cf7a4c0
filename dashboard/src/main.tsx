import { render } from "preact";
import { App } from "./app";
import { startLivePage } from "./live";
import { startOverview } from "./overview";
import "./styles.css";

// Both wait until the service accepts the key and the tab is visible.
startLivePage();
startOverview();

const root = document.getElementById("app");
if (root) {
  render(<App />, root);
}
