/**
 * Types of the few `@jupyterlab/notebook` APIs this extension uses (its INotebookTracker token,
 * NotebookActions.insertBelow, a panel's active cell). The package is deliberately not a
 * dependency: at run time the Lab provides it (a shared singleton, never bundled), and
 * installing it for its types would pull ~190 MB (mermaid, through the markdown parser) into
 * every build. Keep these signatures in line with @jupyterlab/notebook 4.x.
 */
declare module '@jupyterlab/notebook' {
  import { IWidgetTracker } from '@jupyterlab/apputils';
  import { DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
  import { Token } from '@lumino/coreutils';
  import { Widget } from '@lumino/widgets';

  export interface ICellModel {
    readonly type: string;
    readonly sharedModel: { getSource(): string; setSource(value: string): void };
  }

  export interface Notebook extends Widget {
    readonly activeCell: { readonly model: ICellModel } | null;
    mode: 'command' | 'edit';
  }

  export interface NotebookPanel extends DocumentWidget<Notebook, DocumentRegistry.IModel> {}

  export interface INotebookTracker extends IWidgetTracker<NotebookPanel> {}

  export const INotebookTracker: Token<INotebookTracker>;

  export namespace NotebookActions {
    function insertBelow(notebook: Notebook): void;
  }
}
