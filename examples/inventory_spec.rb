# frozen_string_literal: true

require_relative "inventory"

RSpec.describe Inventory::Ledger do
  subject(:ledger) { described_class.new }

  describe "#receive" do
    it "adds a new item with the given quantity" do
      item = ledger.receive("A-1", 4, name: "Washer", price_cents: 5)

      expect(item.quantity).to eq(4)
      expect(ledger.items.keys).to contain_exactly("A-1")
    end

    it "adds to the quantity of a known item" do
      ledger.receive("A-1", 4)
      ledger.receive("A-1", 6)

      expect(ledger.items["A-1"].quantity).to eq(10)
    end
  end

  describe "#take" do
    before { ledger.receive("A-1", 3, price_cents: 100) }

    it "removes stock" do
      ledger.take("A-1", 2)

      expect(ledger.items["A-1"].quantity).to eq(1)
    end

    it "raises when there is not enough stock" do
      expect { ledger.take("A-1", 5) }.to raise_error(Inventory::OutOfStock, /only 3/)
    end

    it "raises for an unknown item" do
      expect { ledger.take("Z-9", 1) }.to raise_error(Inventory::OutOfStock, /unknown item/)
    end
  end

  describe "#low_stock" do
    it "lists items at or below the threshold, scarcest first" do
      ledger.receive("A-1", 7)
      ledger.receive("B-2", 2)
      ledger.receive("C-3", 5)

      expect(ledger.low_stock.map(&:sku)).to eq(%w[B-2 C-3])
    end
  end
end
